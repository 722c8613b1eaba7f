"""The verdict's sound: short tones made here as WAV files (no asset downloaded or shipped).

A box without an audio device plays nothing: the colour and the words carry the verdict anyway.
"""

from __future__ import annotations

import logging
import math
import struct
import tempfile
import wave
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["TONES", "Tones", "write_tone"]

log = logging.getLogger(__name__)
RATE = 22050
TONES: dict[str, tuple[tuple[float, float], ...]] = {
    # tone → (frequency Hz, seconds) segments; 0 Hz is a pause
    "genuine": ((1320.0, 0.12),),
    "provisional": ((880.0, 0.12), (0.0, 0.06), (880.0, 0.12)),
    "alarm": ((330.0, 0.18), (0.0, 0.06), (330.0, 0.18), (0.0, 0.06), (330.0, 0.18)),
}


def write_tone(path: Path, segments: tuple[tuple[float, float], ...]) -> Path:
    frames = bytearray()
    for freq, seconds in segments:
        n = int(RATE * seconds)
        for i in range(n):
            # A short fade in and out: no click at the edges.
            env = min(1.0, i / 200, (n - i) / 200)
            v = math.sin(2 * math.pi * freq * i / RATE) * env * 0.5 if freq else 0.0
            frames += struct.pack("<h", int(v * 32767))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(bytes(frames))
    return path


class Tones:
    def __init__(self) -> None:
        self.sounds: dict[str, Any] = {}
        self.played: deque[str] = deque(maxlen=1000)
        """Tones asked for (tests read it: the sound is asked for whether or not a device plays it)."""
        try:
            from kivy.core.audio import SoundLoader

            folder = Path(tempfile.mkdtemp(prefix="omnishelf-tones-"))
            for name, segments in TONES.items():
                sound = SoundLoader.load(str(write_tone(folder / f"{name}.wav", segments)))
                if sound is not None:
                    self.sounds[name] = sound
        except Exception as exc:  # no audio provider or device: silent, never a crash
            log.info("station: no sound (%s)", exc)

    def play(self, tone: str) -> None:
        self.played.append(tone)
        sound = self.sounds.get(tone)
        if sound is None:
            return
        try:
            sound.stop()
            sound.play()
        except Exception as exc:
            log.info("station: the %s tone did not play (%s)", tone, exc)
