"""The NeuralRecon network (checkpoint-compatible clean-room re-implementation) and its reconstructor.

Modules (import them directly; this package imports nothing so that reading parameters stays cheap):

- :mod:`.config`: ``NeuralReconConfig`` (public parameters), :mod:`.world`: global frame -> network world.
- :mod:`.projection`: per-fragment geometry (projection matrices, aligned frame, volume placement).
- :mod:`.backbone`, :mod:`.backproject`, :mod:`.spvcnn`, :mod:`.gru_fusion`, :mod:`.neucon_net`,
  :mod:`.model`: the network (``model.NeuralRecon``); :mod:`.sparse`: the sparse-convolution backend.
- :mod:`.checkpoint`: upstream checkpoint files; :mod:`.reconstructor`: ``NeuralReconReconstructor``.
"""
