"""The bottom layer: what every other part may use and that uses none of them.

``typed``: dataclass sections built from plain values, their defaults and choice checks.
``collectives``: small object collectives shared by the trainer and the checkpoints.
"""
