"""Texts a routing request pastes besides the generator's documents (tasks/paraphrase.py, issue
20): customers' own messages, short pieces of mortgage paperwork as people copy them out, and
texts that are no mortgage document. Made up for this module, never taken from the hand-written
routing sets in data/routing-handwritten/.
"""

from __future__ import annotations

# A customer's own words: quoted with a label or summary ask, structured; sent to the assistant
# as they are, conversational (the writer wants help, not a label).
CUSTOMER_MESSAGES = (
    "I sent my payment on the 1st and it still shows as unpaid. Can you check?",
    "How do I get a copy of my 1098 for taxes?",
    "My homeowner's insurance changed carriers, where do I send the new declarations page?",
    "I'd like to know my payoff amount as of next Friday.",
    "We both lost our jobs and can't pay for a few months. Is there any help?",
    "Why did my escrow payment go up by $150?",
    "I was charged a late fee even though I paid on time. Please remove it.",
    "Can I extend my rate lock? Closing got pushed.",
    "I think I'm below 80% LTV now. How do I cancel my mortgage insurance?",
    "Your online portal keeps logging me out and I can't make a payment.",
    "I'm selling the house next month, what do I need from you?",
    "Is my loan assumable by a family member?",
    "I'd like to refinance to a lower rate, what are my options?",
    "I got a letter saying my loan was transferred. Who do I pay now?",
    "The insurance check for the roof damage is made out to both of us and you. What now?",
    "Please stop calling me at work.", "I want to make an extra principal payment, how?",
    "I've been on hold for an hour, this is ridiculous.",
    "My property taxes were paid twice this year.", "Can I switch my payment date to the 15th?",
    "My husband passed away and I need to know what happens with the mortgage.",
    "Please send me my loan's current interest rate and balance.",
    "is it possible to lock today at the rate I was quoted yesterday?",
    "I got an escrow shortage notice. Can I pay it all at once?",
    "I need to pause payments, I was in a car accident and can't work.",
    "Where do I mail my payment? The address on my statement is different.",
    "Can you waive the late charge this once? It was a bank error.",
    "I want to dispute the amount on my last statement.",
    "We're thinking about a HELOC, do you offer those?",
    "What's my remaining balance? I want to pay it off this year.",
)
# Short pieces of mortgage paperwork as a person copies them out (made up for this module): a
# structured request asks their type or a summary, a conversational one a figure or a meaning.
SNIPPETS = (
    "Estimated Closing Costs $8,450. Includes $3,100 in Loan Costs + $5,350 in Other Costs.",
    "Loan Term 30 years. Purpose Purchase. Product 5/6 Adjustable Rate. Loan Type FHA.",
    "Cash to Close $41,877.12. Closing Costs Financed (Paid from your Loan Amount) $0.00.",
    "The subject is a two-story colonial in average condition; no functional obsolescence noted.",
    "Opinion of market value as of 03/14: $612,000. Exposure time 30-90 days.",
    "30YR FIXED CONF 6.250 / 0.375 pts / 30-day lock; add 0.25 for LTV > 80.",
    "Jumbo ARM 7/1 pricing effective 8:30 am. FICO 760+ LTV <= 70: 6.125 @ 99.875.",
    "Your new monthly payment beginning July 1 will be $2,318.44, of which $611.20 is escrow.",
    "We were unable to draft your payment on the 15th due to insufficient funds. A $35 fee "
    "applies.",
    "This letter confirms your loan has been placed in a 3-month forbearance plan.",
    "Condition: provide two most recent bank statements, all pages, for account ending 4471.",
    "Income: W-2 $88,400 (2 yrs same employer). Assets: $46,000 verified. Credit: 731 mid.",
    "Reg X 1024.41(b): a servicer shall not make the first notice of foreclosure until the "
    "borrower is more than 120 days delinquent.",
    "A creditor shall deliver the Closing Disclosure no later than three business days before "
    "consummation.",
    "Hi, this is Pat from Lakeside Title. Closing is confirmed for Friday at 2 pm, bring ID.",
    "Notice of Servicing Transfer: effective June 1, payments go to Summit Loan Servicing.",
    "Annual escrow review: projected shortage $812.00, spread over 12 months.",
    "Pre-approval: based on the information provided, you are pre-approved for up to $425,000.",
    "Reason for denial: excessive obligations in relation to income.",
    "Borrower states the late payment in 2022 was due to a hospital stay; documentation "
    "attached.",
    "Appraised value came in $18,000 under contract. Buyer requests renegotiation.",
    "PMI will terminate automatically when the principal balance reaches 78% of the original "
    "value.",
    "Rate lock expires 11/04. Extension: 0.125 per 7 days, max 21 days.",
    "Payoff good through 09/30: principal $201,440.18, interest $612.05, fees $45.00.",
)
OTHER_TEXTS = (
    "The pasta was cold and the waiter forgot our drinks twice. Never again.",
    "Best concert of my life!!! The encore alone was worth the ticket.",
    "The city council voted 7-2 on Tuesday to extend the downtown bike lanes through Elm Street.",
    "Preheat the oven to 375F. Mix flour, sugar and butter, then bake for 25 minutes.",
    "The home team came back from 10 points down to win in overtime.",
    "CONGRATULATIONS! You have won a free cruise. Click here to claim your prize now.",
    "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in the "
    "chloroplasts of plant cells.",
    "Shares of the chipmaker rose 4% after it raised its full-year revenue forecast.",
    "My phone battery dies by noon every day since the last update. Anyone else?",
    "The novel follows two sisters who reunite after twenty years to run their late father's "
    "vineyard.", "Meeting moved to Thursday 3pm, same room. Bring the Q3 slides.",
    "The hotel was spotless and the staff went out of their way to help us.",
    "Volcanoes form where tectonic plates pull apart or one slides beneath another.",
)
