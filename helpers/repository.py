"""Where this series lives: the one place badges and Colab install cells take it from.

After changing these, run ``python -m helpers.notebook_header --fix`` to rewrite
every notebook's badge and Colab cell; a test fails until the notebooks match.
"""

REPOSITORY = "jax-dl-intro/intro-to-deep-learning-jax"  # owner/name on GitHub
BRANCH = "main"
DISTRIBUTION = "jax-dl-intro"  # the pip name of this repository's package


def repository_url() -> str:
    return f"https://github.com/{REPOSITORY}"


def colab_url(notebook: str) -> str:
    """Colab link that opens ``notebooks/<notebook>`` from GitHub."""
    return (
        f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{notebook}"
    )


def pip_install_target() -> str:
    return f"git+{repository_url()}@{BRANCH}"
