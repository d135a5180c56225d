"""The Textual admin console (issue 8); a client of the admin API only."""
