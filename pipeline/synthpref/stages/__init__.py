"""The data stages; each is a plain function over a Storage and the run spec."""
