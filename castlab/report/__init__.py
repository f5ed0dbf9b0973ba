"""`castlab report`: tables, law study and figures of any sweep's result rows (Markdown + PNG)."""
