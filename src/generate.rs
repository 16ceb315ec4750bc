//! Deterministic BankSim-like data: a transactions file and the matching
//! CustomerImportance (network) file, in BankSim's exact formats.
//!
//! The shape, chosen so that all three patterns fire:
//!
//! - **Merchants** are drawn by a Zipf law (exponent 1.1): a few huge
//!   merchants take a large share of all payments, most are small. Each
//!   merchant sells one of BankSim's 15 categories.
//! - **Amounts** follow a log-normal law around the category's median
//!   (transport 27, food 37, health 100, travel 2,600, ...), scaled by the
//!   customer's thrift: one customer in eight is a "kid" who pays a third
//!   of the usual amount.
//! - **Customers** are F (54.6%), M (45.1%), E (0.2%) or U (0.1%), as in
//!   BankSim. Most merchants draw 45% of their payments from male
//!   customers; one in five draws 70% (these are the PatId3 candidates).
//! - **Loyalty**: within the gender pool, customers are again Zipf
//!   distributed, in a merchant-specific order, so every merchant has its
//!   own regulars with many payments (PatId1 and PatId2 candidates).
//! - `step` rises from 0 to 179 over the file; one payment in 80 is fraud.
//!
//! The network file is the row-for-row projection of the transactions
//! (Source = customer, Target = merchant, Weight = amount), like BankSim's.
//! The same arguments always give byte-identical files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Zipf};

/// BankSim's categories, their share of payments and median amount.
const CATEGORIES: [(&str, f64, f64); 15] = [
    ("es_transportation", 0.85, 27.0),
    ("es_food", 0.044, 37.0),
    ("es_health", 0.027, 100.0),
    ("es_wellnessandbeauty", 0.025, 50.0),
    ("es_fashion", 0.011, 55.0),
    ("es_barsandrestaurants", 0.011, 40.0),
    ("es_hyper", 0.010, 35.0),
    ("es_sportsandtoys", 0.0067, 180.0),
    ("es_tech", 0.0040, 95.0),
    ("es_home", 0.0033, 150.0),
    ("es_hotelservices", 0.0029, 170.0),
    ("es_otherservices", 0.0015, 80.0),
    ("es_contents", 0.0015, 40.0),
    ("es_travel", 0.0012, 2600.0),
    ("es_leisure", 0.0004, 280.0),
];

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub rows: u64,
    pub customers: u32,
    pub merchants: u32,
    pub seed: u64,
}

/// Paths of the generated files.
#[derive(Clone, Debug)]
pub struct Generated {
    pub transactions: PathBuf,
    pub customer_importance: PathBuf,
}

pub const TRANSACTIONS_FILE: &str = "transactions.csv";
pub const IMPORTANCE_FILE: &str = "customer_importance.csv";

struct Customer {
    name: String,
    age: u8,
    gender: &'static str,
    thrift: f64,
}

struct Merchant {
    name: String,
    category: usize,
    male_share: f64,
    /// Merchant-specific order of each gender pool: index * stride + offset.
    stride: [u64; 2],
    offset: [u64; 2],
}

fn coprime_stride(rng: &mut ChaCha8Rng, modulus: u64) -> u64 {
    if modulus <= 1 {
        return 1;
    }
    loop {
        let candidate = rng.random_range(1..modulus);
        if gcd(candidate, modulus) == 1 {
            return candidate;
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Writes both files into `dir` (created if needed).
/// How often [`generate_observed`] reports progress, in rows.
pub const PROGRESS_EVERY: u64 = 10_000;

pub fn generate(options: &GenerateOptions, dir: &Path) -> anyhow::Result<Generated> {
    generate_observed(options, dir, &|_| {})
}

/// [`generate`], telling `rows_done` how many transactions are written
/// every [`PROGRESS_EVERY`] rows and at the end.
pub fn generate_observed(
    options: &GenerateOptions,
    dir: &Path,
    rows_done: &dyn Fn(u64),
) -> anyhow::Result<Generated> {
    anyhow::ensure!(options.customers >= 2, "--customers must be at least 2");
    anyhow::ensure!(options.merchants >= 1, "--merchants must be at least 1");
    std::fs::create_dir_all(dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);

    let mut used = rustc_hash::FxHashSet::default();
    let mut unique_name = |rng: &mut ChaCha8Rng, prefix: char| loop {
        let name = format!("{prefix}{}", rng.random_range(10_000_000u64..2_000_000_000));
        if used.insert(name.clone()) {
            return name;
        }
    };
    let customers: Vec<Customer> = (0..options.customers)
        .map(|_| {
            let roll: f64 = rng.random();
            let gender = if roll < 0.546 {
                "F"
            } else if roll < 0.997 {
                "M"
            } else if roll < 0.999 {
                "E"
            } else {
                "U"
            };
            Customer {
                name: unique_name(&mut rng, 'C'),
                age: rng.random_range(0..7),
                gender,
                thrift: if rng.random_bool(0.125) { 0.33 } else { 1.0 },
            }
        })
        .collect();
    // Gender pools: 0 = male, 1 = everyone else.
    let pools: [Vec<u32>; 2] = [
        (0..options.customers)
            .filter(|&i| customers[i as usize].gender == "M")
            .collect(),
        (0..options.customers)
            .filter(|&i| customers[i as usize].gender != "M")
            .collect(),
    ];
    let category_weights: Vec<f64> = CATEGORIES.iter().map(|c| c.1).collect();
    let category_pick = rand_distr::weighted::WeightedIndex::new(&category_weights)?;
    let merchants: Vec<Merchant> = (0..options.merchants)
        .map(|_| Merchant {
            name: unique_name(&mut rng, 'M'),
            category: category_pick.sample(&mut rng),
            male_share: if rng.random_bool(0.2) { 0.70 } else { 0.45 },
            stride: [
                coprime_stride(&mut rng, pools[0].len() as u64),
                coprime_stride(&mut rng, pools[1].len() as u64),
            ],
            offset: [
                rng.random_range(0..pools[0].len().max(1) as u64),
                rng.random_range(0..pools[1].len().max(1) as u64),
            ],
        })
        .collect();

    let merchant_pick = Zipf::new(f64::from(options.merchants), 1.1)?;
    let loyalty = [
        Zipf::new(pools[0].len().max(1) as f64, 0.9)?,
        Zipf::new(pools[1].len().max(1) as f64, 0.9)?,
    ];
    let noise = LogNormal::new(0.0, 0.6)?;

    let generated = Generated {
        transactions: dir.join(TRANSACTIONS_FILE),
        customer_importance: dir.join(IMPORTANCE_FILE),
    };
    let mut transactions =
        BufWriter::with_capacity(1 << 20, File::create(&generated.transactions)?);
    let mut network =
        BufWriter::with_capacity(1 << 20, File::create(&generated.customer_importance)?);
    transactions.write_all(
        b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\r\n",
    )?;
    network.write_all(b"Source,Target,Weight,typeTrans,fraud\r\n")?;
    for row in 0..options.rows {
        let merchant = &merchants[merchant_pick.sample(&mut rng) as usize - 1];
        let pool_index = usize::from(!rng.random_bool(merchant.male_share) || pools[0].is_empty());
        let pool_index = if pools[pool_index].is_empty() {
            1 - pool_index
        } else {
            pool_index
        };
        let pool = &pools[pool_index];
        let rank = loyalty[pool_index].sample(&mut rng) as u64 - 1;
        let slot =
            (rank * merchant.stride[pool_index] + merchant.offset[pool_index]) % pool.len() as u64;
        let customer = &customers[pool[slot as usize] as usize];
        let (category, _, median) = CATEGORIES[merchant.category];
        let amount = median * customer.thrift * noise.sample(&mut rng);
        let cents = (amount * 100.0).round().clamp(0.0, 99_999_999.0) as u64;
        let step = row * 180 / options.rows.max(1);
        let fraud = u8::from(rng.random_bool(1.0 / 80.0));
        writeln_crlf(
            &mut transactions,
            format_args!(
                "{step},'{}','{}','{}','28007','{}','28007','{category}',{}.{:02},{fraud}",
                customer.name,
                customer.age,
                customer.gender,
                merchant.name,
                cents / 100,
                cents % 100
            ),
        )?;
        writeln_crlf(
            &mut network,
            format_args!(
                "'{}','{}',{}.{:02},'{category}',{fraud}",
                customer.name,
                merchant.name,
                cents / 100,
                cents % 100
            ),
        )?;
        if (row + 1) % PROGRESS_EVERY == 0 {
            rows_done(row + 1);
        }
    }
    transactions.flush()?;
    network.flush()?;
    rows_done(options.rows);
    Ok(generated)
}

fn writeln_crlf(out: &mut impl Write, line: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    out.write_fmt(line)?;
    out.write_all(b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_arguments_same_bytes() {
        let options = GenerateOptions {
            rows: 2_000,
            customers: 300,
            merchants: 20,
            seed: 7,
        };
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = generate(&options, a.path()).unwrap();
        let second = generate(&options, b.path()).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(read(&first.transactions), read(&second.transactions));
        assert_eq!(
            read(&first.customer_importance),
            read(&second.customer_importance)
        );
        let text = String::from_utf8(read(&first.transactions)).unwrap();
        assert_eq!(text.lines().count(), 2_001);
        assert!(text.starts_with(
            "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\r\n0,'C"
        ));
    }
}
