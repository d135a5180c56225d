"""Security hardening (issue 17): a hostile request gets a 400 and costs the engines, and others, nothing."""
