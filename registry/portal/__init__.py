"""The patients' portal: their record, who accessed it, and who may (pages.py), over the registry's own
transactions (records.py), in French and English (text.py), server-rendered (render.py)."""
