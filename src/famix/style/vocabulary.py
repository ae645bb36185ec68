"""The paper's default style vocabulary (method.md section 3): the style words of the mining prompts."""

DEFAULT_STYLE_WORDS: tuple[str, ...] = (
    "Ethereal Mist style",
    "Cyberpunk Cityscape style",
    "Rustic Charm style",
    "Galactic Fantasy style",
    "Pastel Dreams style",
    "Dystopian Noir style",
    "Whimsical Wonderland style",
    "Urban Grit style",
    "Enchanted Forest style",
    "Retro Futurism style",
    "Monochrome Elegance style",
    "Vibrant Graffiti style",
    "Haunting Shadows style",
    "Steampunk Adventures style",
    "Watercolor Serenity style",
    "Industrial Chic style",
    "Cosmic Voyage style",
    "Pop Art Popularity style",
    "Abstract Symphony style",
    "Magical Realism style",
)
