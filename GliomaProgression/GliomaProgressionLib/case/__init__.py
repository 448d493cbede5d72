"""What one patient's images are: case folders, acquisition timing, geometry, registration, preprocessing."""
