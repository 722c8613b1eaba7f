"""Attract loop: the store's signage, full screen, and "touch anywhere to start" (the shell wakes up).

Images are drawn whole and centred on black. Videos play through Kivy's video provider when it has
one (ffpyplayer or GStreamer installed on the box); without one Kivy reports the `null` provider,
and the loop shows the welcome with the campaign's name instead of a black screen.
"""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.core.image import Image as CoreImage
from kivy.graphics import Color, Rectangle
from kivy.properties import BooleanProperty, ObjectProperty
from kivy.uix.screenmanager import Screen
from kivy.uix.widget import Widget

__all__ = ["SCREEN", "AttractScreen", "MediaView", "video_provider"]


def video_provider() -> str | None:
    """The name of Kivy's video provider, None when it has none that plays (the `null` one)."""
    from kivy.core.video import Video

    name = Video.__name__ if Video is not None else ""
    return None if not name or name == "VideoNull" else name


class MediaView(Widget):  # type: ignore[misc]
    """What plays now, full size: an image texture, or a video player when the box can play one."""

    texture = ObjectProperty(None, allownone=True)
    showing = BooleanProperty(False)
    """Something is on screen (the welcome steps back)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._player: Any = None
        with self.canvas:
            self._black = Color(0, 0, 0, 0)
            self._back = Rectangle()
            Color(1, 1, 1, 1)
            self._rect = Rectangle()
        self.bind(pos=self._layout, size=self._layout, texture=self._layout)
        app = App.get_running_app()
        if app is not None:
            app.attract.bind(shown=self._changed)
            self._changed()

    def _changed(self, *_: Any) -> None:
        vm = App.get_running_app().attract
        self._stop_video()
        if vm.kind == "image" and vm.picture is not None:
            try:
                self.texture = CoreImage(vm.picture).texture
            except Exception:  # an image the GL side refuses: the welcome stays
                self.texture = None
        elif vm.kind == "video" and vm.video and video_provider() is not None:
            from kivy.uix.video import Video

            self.texture = None
            self._player = Video(source=vm.video, state="play", options={"eos": "loop"}, allow_stretch=True)
            self._player.pos, self._player.size = self.pos, self.size
            self.add_widget(self._player)
        else:
            self.texture = None
        self.showing = self.texture is not None or self._player is not None
        self._layout()

    def _stop_video(self) -> None:
        if self._player is not None:
            self._player.state = "stop"
            self.remove_widget(self._player)
            self._player.unload()
            self._player = None

    def _layout(self, *_: Any) -> None:
        self._black.a = 1 if (self.texture is not None or self._player is not None) else 0
        self._back.pos, self._back.size = self.pos, self.size
        if self._player is not None:
            self._player.pos, self._player.size = self.pos, self.size
        tex = self.texture
        if tex is None:
            self._rect.texture, self._rect.size = None, (0, 0)
            return
        # The picture whole, centred, its proportions kept (letterboxed on black).
        scale = min(self.width / max(1, tex.width), self.height / max(1, tex.height))
        w, h = tex.width * scale, tex.height * scale
        self._rect.texture = tex
        self._rect.pos = (self.center_x - w / 2, self.center_y - h / 2)
        self._rect.size = (w, h)


class AttractScreen(Screen):  # type: ignore[misc]
    pass


SCREEN = AttractScreen
