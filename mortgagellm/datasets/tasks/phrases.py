"""Phrase banks of the routing generator's paraphrase side (tasks/paraphrase.py, issue 20).

Written for this module from the two route definitions (tasks/routing.py's docstring), never
from the hand-written routing sets in data/routing-handwritten/ (the test split stays blind).
Slots: {noun} the pasted document's kind in words, {labels} a task's label list, {product} a
loan product, {action} a servicing action, {term} a mortgage term, {doc_name} a document type,
{regulation} a rule, {figure} a figure's name, {topic} a mortgage topic; a second {..2} slot is
another entry of the same bank.
"""

from __future__ import annotations

# ---- structured asks: (ask, explicit). explicit=False: names neither the task nor its labels,
# so only the pasted text says it wants a label (the request is marked ambiguous).
DECISION_ASKS = (
    ("Approve, refer or deny?", True), ("approve/refer/deny?", True), ("decision?", True),
    ("Decision only.", True), ("UW decision, label only.", True), ("credit decision pls", True),
    ("Underwriting decision for this file, please.", True), ("Final decision on this one?", True),
    ("What's the underwriting decision here?", True), ("approve or decline? one word", True),
    ("Give me the underwriting decision: {labels}.", True), ("Quick UW check: {labels}", True),
    ("Run this file through the guidelines and give me the decision.", True),
    ("Would this borrower be approved?", True), ("Does this file get approved?", True),
    ("Should we approve this loan or not?", True), ("is this an approve or a deny", True),
    ("Please review the loan file and let me know whether it should be approved, referred to a "
     "senior underwriter, or denied. Just the decision is fine.", True),
    ("Can this borrower qualify, or is it a refer?", True), ("Make the underwriting call.", True),
    ("Decision plus one line on why.", True), ("approve it or not? label only, no essay", True),
    ("What decision would the program rules reach for this application?", True),
    ("Would you approve this loan? approve / refer / deny", True), ("UW call?", True),
    ("How would underwriting decide this file?", True), ("approve, refer, deny - which?", True),
    ("I need an underwriting decision on the borrower below by end of day.", True),
    ("Can you tell me if this gets approved? Only the outcome please.", True),
    ("Would an underwriter sign off on these numbers?", True), ("approve?", True),
    ("Is this borrower approvable?", True), ("Does this one qualify? yes / no / refer", True),
    ("Grade this file: {labels}.", True), ("What's your decision on the application?", True),
    ("Based on the numbers, approve, refer or deny this borrower.", True),
    ("Pre-underwrite this for me. Outcome only.", True), ("deny or approve this one", True),
    ("Any chance this gets approved? Give me the call.", True),
    ("Underwrite it: {labels}", True), ("Does this application pass underwriting?", True),
    ("What do you make of this file?", False), ("Go or no go on this borrower?", False),
    ("Is this file good to go?", False), ("Where does this one land?", False),
    ("Verdict?", False), ("Does this one pass?", False), ("thumbs up or down?", False),
    ("Your call on this borrower?", False), ("Can we close this one or not?", False),
)
DOC_KIND_ASKS = (
    ("What type of document is this?", True), ("doc type?", True),
    ("Document type, one word.", True), ("Which kind of mortgage document is this?", True),
    ("Classify this document.", True), ("Tag the document type.", True),
    ("Is this a Loan Estimate, a Closing Disclosure or something else?", True),
    ("What form is this: LE, CD, appraisal, rate sheet...?", True), ("Label this doc.", True),
    ("Name the document type of the text below.", True), ("document category?", True),
    ("Please identify what kind of document the following is so I can index it correctly.",
     True), ("Sort this into the right document bucket.", True),
    ("what kind of doc is this one", True), ("Which doc type should this be filed under?", True),
    ("Is this an appraisal or a rate sheet?", True), ("Give me the doc type only.", True),
    ("Which of these is it: {labels}?", True), ("Document classification needed:", True),
    ("type of paperwork?", True), ("What sort of document did the borrower send us?", True),
    ("Can you tell me which mortgage form this text comes from?", True),
    ("Is this an email, a regulation or a disclosure?", True), ("doc class pls", True),
    ("What would you call this document? Category only.", True),
    ("Which type of mortgage paperwork is the following?", True),
    ("Is this a servicing letter?", True), ("Label the kind of text below.", True),
    ("What is this?", False), ("what am I looking at here?", False),
    ("Found this in the file, no clue what it is.", False), ("Any idea what this paper is?", False),
    ("Where does this go in the loan folder?", False), ("Recognise this one?", False),
)
INTENT_ASKS = (
    ("intent?", True), ("What's the customer's intent?", True), ("Classify the intent.", True),
    ("Which intent: {labels}?", True), ("Tag this email by intent.", True),
    ("What does the borrower want here: {labels}?", True), ("Customer intent, label only.", True),
    ("Route this ticket: which request type?", True), ("request type?", True),
    ("What is this customer asking for? One label.", True), ("Which queue does this go to?", True),
    ("What category of request is this email?", True), ("Label the borrower's request.", True),
    ("What's the ask in this customer email? just the category", True),
    ("Can you classify what this borrower is writing in about?", True),
    ("Please tag the intent of the message below for the servicing dashboard.", True),
    ("Which bucket: escrow, payoff, forbearance, rate lock, late fee?", True),
    ("What kind of request is this from the customer?", True), ("intent label pls", True),
    ("Is this customer asking about escrow or a payoff?", True), ("Categorize this ticket.", True),
    ("What is the homeowner's request about? Category only.", True),
    ("Tag the topic of this inbound message.", True), ("Classify this borrower message.", True),
    ("Intent, plus a one-line summary for the ticket.", True),
    ("Which team should take this: escrow, payoff, hardship, locks or fees?", True),
    ("What does this person want?", False), ("Can you tell what they're after?", False),
    ("Who on the team should handle this one?", False), ("What's going on with this one?", False),
    ("what are they asking", False),
)
SUMMARY_ASKS = (
    ("Summarise this:", True), ("summarize pls", True), ("tl;dr", True), ("TL;DR this", True),
    ("Give me a quick summary.", True), ("Can you sum this up?", True), ("Summary please.", True),
    ("Boil this down to the key points.", True), ("Condense this into three bullets.", True),
    ("Write a two-line summary for the file notes.", True), ("recap?", True),
    ("Short summary of the following, please.", True), ("key points only", True),
    ("Can you give me a summary of this {noun}?", True), ("sum up this {noun}", True),
    ("Summarize this {noun} in plain English for the borrower.", True),
    ("Please summarize the {noun} below; I need the main figures and what it means.", True),
    ("summary in bullet points", True), ("Could you summarise this for the credit committee?",
                                         True),
    ("Summarize this in Spanish.", True), ("Give me the highlights of this {noun}.", True),
    ("Executive summary of the text below.", True), ("One-paragraph summary, please.", True),
    ("Can you shorten this to the essentials?", True), ("Summarize the key fields.", True),
    ("What's the main takeaway of this {noun}?", True), ("Synopsis?", True),
    ("Could you give me a quick rundown of this {noun}?", True), ("Digest this for me.", True),
    ("Pull out the key facts and summarize.", True), ("Abstract of this, please.", True),
    ("what does this {noun} basically say?", True), ("Give me the cliff notes.", True),
    ("Summarize this and tell me what kind of document it is.", True),
    ("What's the gist?", False), ("what's the short of it?", False),
    ("Break this down for me.", False), ("What does this say, in a nutshell?", False),
    ("Too long, didn't read. Help?", False), ("Can you make sense of this for me?", False),
)
LABEL_LISTS = {
    "decision": ("approve, refer or deny", "approve / refer / deny", "APPROVE | REFER | DENY",
                 "approve, refer, or deny"),
    "intent": ("escrow, payoff, forbearance, rate_lock or late_fee",
               "escrow / payoff / forbearance / rate lock / late fee"),
    "doc_kind": ("loan estimate, closing disclosure, appraisal, rate sheet, email, note",
                 "LE, CD, appraisal, rate sheet, letter or regulation"),
}
FORMAT_TAILS = {
    "label": (" One word.", " Label only.", " No explanation needed.", " Just the label please.",
              " Lowercase, nothing else.", " Reply with the label and nothing more.",
              " Answer in caps.", " Label, then one sentence why."),
    "summary": (" Three bullets max.", " Keep it under 50 words.", " Plain English please.",
                " Bullet points.", " Two sentences.", " In Spanish, please."),
}

# ---- what surrounds a request
GREETINGS = (
    "Hi!", "Hey,", "Good morning!", "hello :)", "Hey there, hope your week is going well.",
    "Quick one:", "Morning. Long day already.", "Hi team,", "Happy Friday!", "Sorry, another one:",
    "ok next one", "Hope you're doing well!", "Hiya 👋", "Thanks for the help earlier.",
    "Ugh, Mondays.", "Hello again!", "Good afternoon,", "hey hey", "Hi, it's me again.",
    "Busy day here, so bear with me.", "Coffee hasn't kicked in yet, but here goes.",
    "Hope the weekend was good!", "So, funny story.", "Hey! Quick favour.", "Greetings.",
)
SIGN_OFFS = (
    "Thanks!", "thx", "Appreciate it!", "cheers", "Thank you so much.", "no rush",
    "Thanks in advance 🙏", "you're the best", "Sent from my phone, sorry for typos.", "ty!",
    "Have a good one.", "Thanks a ton :)", "Much appreciated.", "lmk", "🙂", "Need it by 5.",
)

# ---- conversational slot banks
PRODUCTS = (
    "an FHA loan", "a VA loan", "a USDA loan", "a jumbo loan", "a 5/1 ARM", "a 7/6 ARM",
    "an interest-only loan", "a HELOC", "a reverse mortgage", "a cash-out refinance",
    "a rate-and-term refinance", "an FHA streamline refinance", "a VA IRRRL", "a bridge loan",
    "a construction-to-permanent loan", "a 2-1 buydown", "a piggyback second mortgage",
    "a balloon mortgage", "a non-QM loan", "a DSCR loan", "a bank-statement loan",
    "an assumable mortgage", "a 15-year fixed", "a 30-year fixed", "a HomeReady loan",
    "a conventional 97 loan", "a home equity loan", "a portfolio loan", "a physician loan",
    "a 203(k) renovation loan", "a temporary buydown", "a 40-year mortgage",
)
ACTIONS = (
    "forbearance", "a loan modification", "an escrow analysis", "an escrow shortage",
    "a payoff quote", "a short sale", "a deed in lieu", "foreclosure", "PMI removal",
    "a mortgage recast", "a servicing transfer", "a late fee", "a repayment plan",
    "force-placed insurance", "a partial claim", "a rate lock extension", "a subordination",
    "an escrow refund", "the grace period", "a payment deferral", "loss mitigation",
    "an escrow waiver", "a lien release", "autopay enrollment",
)
TERMS = (
    "escrow", "PMI", "APR", "discount points", "a rate lock", "DTI", "LTV",
    "an appraisal contingency", "title insurance", "earnest money", "a prepayment penalty",
    "amortization", "reserves", "a gift letter", "a conditional approval", "a clear to close",
    "compensating factors", "an AUS finding", "the right of rescission", "a float-down",
    "mortgage insurance premium", "a lender credit", "a seller concession",
    "negative amortization", "an impound account", "a debt-to-income ratio", "closing costs",
    "MIP", "a jumbo limit", "the conforming loan limit", "an origination fee", "a margin",
)
DOC_NAMES = (
    "a Loan Estimate", "a Closing Disclosure", "an appraisal report", "a rate sheet",
    "an underwriting note", "a loan application", "a servicing notice", "an escrow statement",
    "a payoff statement", "an adverse action notice", "a pre-approval letter", "a 1003",
)
REGULATIONS = (
    "TRID", "RESPA", "Regulation X", "Regulation Z", "ECOA", "the Fair Housing Act", "HMDA",
    "the ability-to-repay rule", "the HPML rules", "the SAFE Act",
    "the Homeowners Protection Act", "TILA", "Regulation B", "the CARES Act",
)
FIGURES = ("APR", "cash to close", "monthly payment", "interest rate", "loan amount", "DTI",
           "LTV", "escrow amount", "appraised value", "payoff amount", "total closing costs")
TOPICS = ("buying a first home", "refinancing", "the closing process", "getting pre-approved",
          "escrow accounts", "mortgage insurance", "home equity", "rate locks")

# ---- conversational requests: (template, asks, ambiguous, pasted). pasted: None (no document),
# a document group of tasks/paraphrase.py ("any", "application", "email", "loan": a mortgage
# document or some of its lines), "file" (a loan file's numbers written out) or "other" (a text
# that is not a mortgage document, pastes.py). Ambiguous: the surface names labels, document
# types or a summary, or a text is pasted and something other than a label or summary is asked
# of it.
_DEFINITIONS = (
    "What is {term}?", "what's {term}", "Explain {term} simply.", "ELI5: {term}",
    "What does {term} mean on my paperwork?", "Define {term}.", "{term}? never heard of it",
    "Can you tell me what {term} is and why it matters?", "term check: {term}?",
    "Is {term} the same thing as {term2}?", "What's the point of {term}?",
)
_EXPLANATIONS = (
    "How does {product} work?", "Who qualifies for {product}?", "pros and cons of {product}?",
    "What's the difference between {product} and {product2}?", "What's the catch with {product}?",
    "How much do I need down for {product}?", "Can I use {product} for a rental property?",
    "Why would anyone pick {product}?", "Explain {product} to me like I'm new to this.",
    "Are rates higher on {product}?", "What credit score do I need for {product}?",
    "What happens during {action}?", "How long does {action} usually take?",
    "Will {action} hurt my credit?", "Can you walk me through {action}, step by step?",
    "When would a servicer offer {action}?", "How do I ask my servicer for {action}?",
    "My servicer mentioned {action}. What does that involve for me?",
    "Does {action} show up on my credit report?", "Is {action} the same as {action2}?",
    "What paperwork does the servicer need for {action}?", "Who pays for {action}?",
    "What does {regulation} require of a lender?", "Why does {regulation} exist?",
    "How does {regulation} protect borrowers?", "What's the difference between {regulation} "
    "and {regulation2}?", "Why do lenders care so much about {term}?",
    "How do lenders calculate {term}?", "how is {term} different for {product}?",
)
_FACTS = (
    "Does {regulation} apply to a second home?", "Under {regulation}, how many days does the "
    "borrower get?", "Which rule covers {action}: {regulation} or {regulation2}?",
    "Is there a limit on how much {action} can cost me?", "What's the max DTI for {product}?",
    "How long is a pre-approval good for?", "What's the conforming loan limit this year?",
    "When is a mortgage payment considered late?", "How many days before closing do I get my "
    "final numbers?", "Can a lender charge for {action}?",
)
_ADVICE = (
    "Should I choose {product} or {product2}?", "I want to refinance. Where do I even start?",
    "I'm behind on two payments. What can I do?", "my escrow went up by $210 a month, "
    "is that normal??", "Can I get a mortgage with a 590 score?",
    "I've been self-employed for two years. What will a lender want to see?",
    "Is now a good time to buy, or should we keep renting?",
    "how much house can I afford on $85k a year", "Rates dropped since I locked. Can I get the "
    "lower one?", "We're getting divorced. What happens to the mortgage?",
    "What should a letter of explanation for a late payment say?", "Any tips for {topic}?",
    "Is {product} a good fit for someone with a 640 credit score?",
    "Would you recommend {action} in my situation? I lost my job last month.",
    "Should I pay extra principal or invest the money?", "Is it smart to put less than 20% "
    "down?", "How can I get my loan approved faster?", "What can I do to avoid a denial?",
    "My lender is asking for more documents again. Is that a bad sign?",
    "Is it worth paying for {term}?", "What should I watch out for with {product}?",
)
_INSTRUCTIONS = (
    "Write an email to my loan officer asking for a status update.",
    "Draft a text to my realtor saying closing moves back a week.",
    "Give me a numbered list of the documents I need for {product}.",
    "Answer in one word: is {term} refundable?", "Yes or no only: does {product} need "
    "mortgage insurance?", "Make me a checklist for closing day.",
    "In two sentences, explain {term}.", "Reply in Spanish: what is {term}?",
    "Put the steps of {action} in a table.", "Write a short post for our website about "
    "{product}.", "Give me three questions to ask a lender about {term}.",
    "Respond only with a number: how many months are in a 30-year loan?",
    "Format your next answers as bullet points, please.", "Write a haiku about {term}.",
    "Compose a thank-you note to our underwriter.", "Make a comparison table of {product} "
    "and {product2}.", "Keep answers short from now on.", "Translate 'escrow account' into "
    "French.", "Write a script for calling a borrower about {action}.",
    "Create a quiz with 5 questions about {term}.", "Draft a welcome email for new borrowers.",
)
_CHAT = (
    "hi", "hey", "good morning!", "how's it going?", "who are you?",
    "what can you help me with?", "are you a real person?", "ok cool, thanks",
    "lol that's wild", "You've been super helpful today.", "brb", "good night!",
    "I'm so stressed about this house.", "We just closed on our first home!!",
    "how was your weekend?", "never mind, I figured it out",
    "Can you remember what I asked earlier?", "thank you!!", "that's all for today",
    "what's up", "you're a lifesaver", "sorry, I'm confused", "hmm ok", "Test message, ignore.",
)
_ON_DOCS = (
    ("What's the {figure} here?", "figure", "loan"),
    ("how much is the {figure} on this?", "figure", "loan"),
    ("Can you find the {figure} in this {noun}?", "figure", "loan"),
    ("Is the {figure} on this normal for today's market?", "advice", "loan"),
    ("Which of these numbers can still change before closing?", "fact", "loan"),
    ("what rate did they quote me?", "figure", "loan"), ("When does this expire?", "fact", "any"),
    ("Is this a good deal?", "advice", "any"), ("Who sent this?", "fact", "any"),
    ("What should I ask my lender about this {noun}?", "advice", "any"),
    ("Does anything in this {noun} look off to you?", "advice", "any"),
    ("How much will I owe in total?", "figure", "loan"),
    ("what's the DTI on this?", "figure", "file"),
    ("What would the monthly payment be?", "figure", "file"),
    ("How much more income would this borrower need to get under 43% DTI?", "figure", "file"),
    ("Which program fits this borrower best?", "advice", "file"),
    ("What could this borrower do to improve the file?", "advice", "file"),
    ("Is the rate on this fixed or adjustable?", "fact", "loan"),
    ("When is the first payment due?", "fact", "loan"),
    ("Does this include mortgage insurance?", "fact", "loan"),
    ("why is the APR higher than the rate here?", "explanation", "loan"),
    ("Which of these fees can I shop around for?", "advice", "loan"),
    ("List every fee over $500 in this.", "fact", "loan"),
    ("what does 'prepaids' mean in this {noun}?", "definition", "any"),
    ("How many days do I have to respond to this?", "fact", "any"),
    ("Is this legit or a scam?", "advice", "any"), ("Do I need to do anything about this?",
                                                     "advice", "any"),
    ("What's the lowest rate on this sheet for a 740 score?", "figure", "any"),
    ("How much reserves does this borrower have?", "figure", "file"),
    ("Could this borrower afford a bigger loan?", "advice", "file"),
    ("What's the housing ratio if taxes are $400 a month?", "figure", "file"),
    ("Does this meet the 43% rule?", "fact", "file"),
)
_AMBIGUOUS = (
    ("Why would a file get referred instead of approved?", "explanation", None),
    ("What does 'refer' mean in underwriting?", "definition", None),
    ("What usually gets a loan denied?", "explanation", None),
    ("My application was denied. What are my options now?", "advice", None),
    ("How do underwriters decide between approve, refer and deny?", "explanation", None),
    ("What's the difference between a refer and a deny?", "explanation", None),
    ("What makes a customer email count as a complaint?", "explanation", None),
    ("Can a denied loan be approved later?", "explanation", None),
    ("What kinds of requests does a servicing desk get most?", "explanation", None),
    ("Is an approval with conditions a real approval?", "explanation", None),
    ("How should I classify my debts when applying?", "advice", None),
    ("If a file is referred, who looks at it next?", "explanation", None),
    ("How long does it take to hear back after a refer?", "fact", None),
    ("Our loan got denied because of DTI. How do we fix that?", "advice", None),
    ("What's the usual reason an escrow request gets escalated?", "explanation", None),
    ("How do I write a good summary of a loan file for underwriting?", "advice", None),
    ("Why do lenders categorize requests by intent?", "explanation", None),
    ("Which documents count as proof of income?", "fact", None),
    ("What's the difference between {doc_name} and {doc_name2}?", "explanation", None),
    ("When will I get {doc_name}?", "fact", None),
    ("What should I double-check on {doc_name}?", "advice", None),
    ("Why did my lender send me {doc_name}?", "explanation", None),
    ("Who prepares {doc_name}?", "fact", None),
    ("What goes into {doc_name}?", "explanation", None),
    ("Summarize the pros and cons of {product}.", "explanation", None),
    ("Give me a summary of what {regulation} covers.", "explanation", None),
    ("summarize how {action} works", "explanation", None),
    ("Can you sum up {topic} in a few bullets?", "explanation", None),
    ("Classify the main loan types for me and say who each is for.", "explanation", None),
    ("What type of loan is best for a veteran?", "advice", None),
    ("Draft a polite reply to this customer.", "instruction", "email"),
    ("How should I respond to this email?", "advice", "email"),
    ("Translate this into Spanish.", "instruction", "any"),
    ("Rewrite this so a first-time buyer understands it.", "instruction", "any"),
    ("Proofread this before I send it.", "instruction", "any"),
    ("Turn this into a checklist of next steps for the borrower.", "instruction", "any"),
    ("Why was this file decided the way it was?", "explanation", "application"),
    ("Explain what this {noun} means for me.", "explanation", "any"),
    ("Is the tone of this positive or negative?", "instruction", "other"),
    ("Summarize this:", "instruction", "other"), ("tl;dr", "instruction", "other"),
    ("What category is this: sports, politics or business?", "instruction", "other"),
    ("spam or not spam?", "instruction", "other"),
    ("What kind of text is this?", "instruction", "other"),
    ("Classify the sentiment.", "instruction", "other"),
)
# Questions that carry their own figures ({money}, {pct}, {score}) but ask no label.
NUMBER_QUESTIONS = (
    ("My estimate shows an APR of {pct} but the rate is {pct2}. Why the difference?",
     "explanation"),
    ("We make {money} a month and pay {money2} on other debts. How much can we borrow?",
     "advice"),
    ("My score is {score}. What rate should I expect?", "advice"),
    ("Closing costs on my estimate are {money}. Is that high?", "advice"),
    ("If I put {pct} down on a {money} house, will I need PMI?", "fact"),
    ("My payment went from {money} to {money2}. Why would that happen?", "explanation"),
    ("I owe {money} and the house is worth {money2}. Can I refinance?", "advice"),
    ("Our offer was {money} but it appraised at {money2}. What happens now?", "advice"),
    ("my escrow shortage is {money}, do I have to pay it all at once?", "fact"),
    ("Is {pct} a good rate for a 30-year right now?", "advice"),
    ("With a {score} score and {pct} DTI, what program should I look at?", "advice"),
    ("What's the monthly payment on {money} at {pct} for 30 years?", "figure"),
    ("How much is one point on a {money} loan?", "figure"),
)
CONVERSATIONAL = (
    *((t, "definition", False, None) for t in _DEFINITIONS),
    *((t, "explanation", False, None) for t in _EXPLANATIONS),
    *((t, "fact", False, None) for t in _FACTS),
    *((t, "advice", False, None) for t in _ADVICE),
    *((t, "instruction", False, None) for t in _INSTRUCTIONS),
    *((t, "chat", False, None) for t in _CHAT),
    *((t, asks, False, pasted) for t, asks, pasted in _ON_DOCS),
    *((t, asks, True, pasted) for t, asks, pasted in _AMBIGUOUS),
    *((t, asks, False, None) for t, asks in NUMBER_QUESTIONS),
    ("{message}", "advice", False, None), ("Hi, {message}", "advice", False, None),
    ("{message} What should I do?", "advice", False, None),
    ("Quick question: {message}", "advice", False, None),
)
