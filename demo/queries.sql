-- Fraud detection: probability of fraud for large card transactions (models/fraud.onnx)
SELECT id, amount, hour, aws_sagemaker.invoke_endpoint('fraud', NULL, amount, hour, distance_km, foreign_country, card_present) AS fraud_probability FROM transactions WHERE amount > 500 ORDER BY id LIMIT 10;

-- Ad targeting: sentiment of customer reviews (detect_sentiment)
SELECT r.id, r.customer_id, left(r.body, 50) AS review, s.sentiment, s.confidence FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id LIMIT 10;

-- Product recommendations: expected rating of each product for customer 7 (models/recommend.onnx)
SELECT p.id, p.name, aws_sagemaker.invoke_endpoint('recommend', NULL, c.age, c.avg_basket, c.sporty, p.category_id, p.price) AS score FROM customers c JOIN products p ON true WHERE c.id = 7 ORDER BY p.id LIMIT 10;
