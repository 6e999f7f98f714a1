"""The lowest layer: errors, atomic writes, threads, processes, attributes, prompts, model profiles, loading a
model and what it is made of, memory options, the option groups and the setup every verb starts with. It imports
no other layer of debias."""
