// The constants of the sanity strip, the compare panel and the region list (issues 15, 16).
export { METHODS } from './config.js';

export const COMPARE_K = 5; // matches listed per unit (the route's default)
export const COMPARE_N = null; // data-set images correlated over; null: the server's default (100, or the data set when smaller)
export const REGION_K = 20; // units listed for a region (the route's default)
export const REGION_STEP = 4; // px an arrow key moves the box (Shift: grows or shrinks it)
export const SANITY_MODE = 'cascading'; // Adebayo et al.'s Fig. 2: from the unit's layer down, cumulatively
