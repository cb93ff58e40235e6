"""absl-flag entry points (`python -m scripts.NAME`). Only this package defines flags."""
