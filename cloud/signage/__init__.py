"""Signage: media, playlists, campaigns, versioned publications → per-screen timelines; proof of play."""
