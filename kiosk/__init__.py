"""The touchscreen "cloud shelf" (Kivy). A thin UI over the edge agent's local API; see issue tracker."""
