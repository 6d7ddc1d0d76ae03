pub mod bitbucket;
pub mod signature;
