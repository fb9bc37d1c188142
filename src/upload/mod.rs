pub mod zip_check;
