"""`agentkit ui`: a read-only web app over a store (runs, search trees, improve rounds,
policies, pairs, the experience library and the background trainer), live while others
write. Starlette, Jinja2 and uvicorn load only here: `pip install 'agentkit'` brings them."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
