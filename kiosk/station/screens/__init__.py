"""The station's screens: one `.py` + one `.kv` each, listed in `kiosk.station.app.SCREENS`."""
