"""The kiosk's screens: one `.py` (the view class) and one `.kv` (its layout) each."""
