from meshgate.cli.main import app

app(prog_name="meshgate")
