"""A pickle that proves code ran: loading it (with anything that unpickles, e.g. torch.load(weights_only=False))
creates the marker file. Tests plant it in files tiercel reads and assert the marker never appears."""


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))
