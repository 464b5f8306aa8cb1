"""The Streamlit app's shared layer: page setup and model picker, URL parameters, cached analyses, charts."""
