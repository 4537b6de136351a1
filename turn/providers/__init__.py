"""TURN credential providers: coturn shared secret, coturn Redis user DB, reTurn users file."""
