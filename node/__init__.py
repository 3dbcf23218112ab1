"""The composition, outside the core: builds the actors from settings (server), serves them over HTTP
and MLLP, and the `xds` command (cli) with its document transfers (transfer)."""
