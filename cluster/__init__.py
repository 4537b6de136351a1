"""Several signalling nodes on one Redis: call ownership, relayed sockets, adoption."""
