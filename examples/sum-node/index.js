// Adds the numbers it is given: {"numbers": [1, 2, 3]} -> {"sum": 6}
exports.handler = async (event, context) => {
  const numbers = (event && event.numbers) || [];
  console.log(`summing ${numbers.length} numbers for ${context.requestId}`);
  return { sum: numbers.reduce((a, b) => a + b, 0) };
};
