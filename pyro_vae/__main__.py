from pyro_vae.app.cli import main

main()
