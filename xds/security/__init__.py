"""Who is calling and what they may do: the Principal, the XUA and VIHF assertion checks, the STS's
assertions (issue), and the choice of mode from settings (modes)."""
