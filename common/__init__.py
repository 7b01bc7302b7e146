"""Code both the transport (emulator/) and the device models (devmodel/) use,
importing neither: the fast codec for fixed-size construct structs
(`fixed`), the rate-limited log for lines a client or a guest can repeat
without end (`ratelog`) and files a device writes on the side (`files`)."""
