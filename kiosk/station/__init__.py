"""The clerk's station: a Kivy touchscreen app on the kiosk's shell pieces (`omnishelf station`)."""
