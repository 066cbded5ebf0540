from tiercel.cli import entry

entry()
