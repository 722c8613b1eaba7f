"""The signage player: plays the timeline the cloud publishes for this box's screen (see player.py)."""
