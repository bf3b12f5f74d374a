"""ChiMed-VL pipeline: rebuild a Chinese medical vision-language corpus, with images, from PMC figures."""
__version__ = "0.1.0"
