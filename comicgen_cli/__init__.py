"""`comicgen`: a remote client of comicgen's REST API and WebSocket, for authors' terminals and
scripts. It never touches the server's database; it needs only a URL and an API token."""
