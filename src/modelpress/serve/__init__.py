"""serve: an Open Inference Protocol v2 server with dynamic batching and Prometheus metrics.

``protocol`` parses and encodes OIP v2 tensors, ``batcher`` batches requests
(plain asyncio), ``runner`` loads models and runs them on threads, ``metrics``
exports Prometheus metrics, ``repository`` holds models and the router seam,
``app`` wires them to Starlette, ``server`` runs uvicorn, ``ray_serve``
deploys the same app on Ray Serve and ``loadtest`` measures a server.
"""
