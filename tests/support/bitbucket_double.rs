//! A double of Bitbucket's documented REST endpoints. Placeholder.
