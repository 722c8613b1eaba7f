"""The cloud shelf on the box: search index with pinyin, availability, kiosk orders."""
