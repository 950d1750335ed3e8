"""The operator's safety-stop console: `client` (sockets and state, no UI) and `app` (the Textual UI)."""
