"""Everything a volunteer runs: protocol, transports, the stage executor, all-reduce, `swarm-peer`.

`peers` never imports `swarm`.
"""
