"""The only layer that knows flags and run directories: :mod:`.config`, :mod:`.experiment`,
:mod:`.run`, :mod:`.cli`."""
