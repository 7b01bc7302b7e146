"""Code both the transport (emulator/) and the device models (devmodel/) use,
importing neither: the fast codec for fixed-size construct structs
(`fixed`)."""
