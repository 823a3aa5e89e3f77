"""Search loops that write kernels: `fibmoe agent` (iterative) and `fibmoe evolve` (OpenEvolve).

llm.py        one interface over the openai and anthropic clients (retries, tokens, cost)
candidate.py  a candidate's files, applying a model's reply, the static checks
sandbox.py    evaluation through `fibmoe eval --json` in a killable subprocess; promotion
runs.py       run folders (config, lineage, best/, summary) and the live status line
agent.py      the iterative agent
evolve.py     OpenEvolve driven with our model client and evaluation stages
prompts/      the prompt files (plain text; --prompts DIR overrides them one by one)
"""
