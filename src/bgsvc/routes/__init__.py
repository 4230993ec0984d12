"""Thin HTTP routers: parse parameters, call the service, shape the response."""
