"""kurento_ctl package."""
