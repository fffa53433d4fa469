"""The xDS control plane: snapshots per gateway, served to its Envoys over ADS."""
