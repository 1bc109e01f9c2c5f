"""The appliance's own recovery: the recovery kit (vault key + CA, sealed with a passphrase) and the configuration
backup (state, certificates, settings, secrets sealed with the kit's backup key), kept in the home and in the vault.
Below the appliance: it needs only the home layout, the keyring and file helpers."""
