"""Example policies and a plain WSGI/ASGI app, installed as ``fastlimit.examples``."""
