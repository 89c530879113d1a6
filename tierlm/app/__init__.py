"""The application layer: the `tierlm` command line, the local stack launcher and the demo.

It sits above every other part (foundation, kernels, edge, cloud, router) and nothing imports it.
"""
