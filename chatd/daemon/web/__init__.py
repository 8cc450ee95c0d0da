"""
chatd in the browser: the site of --web-port (the page, from package data)
and its WebSocket gateway, where browsers are members of their own kind
(docs/web.md).
"""
